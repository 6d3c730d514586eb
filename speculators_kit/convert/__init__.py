"""`speckit convert`: import research checkpoints (SafeAILab EAGLE / EAGLE-3, HASS, vllm-project
speculators) into our speculator format, and export to the speculators package's layout.
Key-map tables + one pure state-dict function that never invents a weight."""
