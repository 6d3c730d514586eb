"""Small builders shared by tests."""

from speculators_kit.core.build import draft_config_for_target, init_draft
from speculators_kit.core.format import save_draft


def make_draft(target, out, arch="eagle3", layers=1, init="random", seed=0, **kw):
    cfg = draft_config_for_target(target, arch, layers, **kw)
    head = init_draft(cfg, target, init, seed)
    save_draft(head, out, target_dir=target, overwrite=True)
    return head
