"""Personal data detection (``policies.pii.detection``); masking is ``policies.masking``, keys ``policies.tokens``."""
