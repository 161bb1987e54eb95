"""How far to trust a map: the trust card (``card``) and the shortcut check without ground truth (``shortcut``)."""
from .card import CHECKS, card_cost, card_settings, trust_card
from .shortcut import shortcut_check, suspect_areas

__all__ = ["CHECKS", "card_cost", "card_settings", "trust_card", "shortcut_check", "suspect_areas"]
