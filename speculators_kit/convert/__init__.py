"""convert stage (see its issue); engine code stays out of speculators_kit.core."""
