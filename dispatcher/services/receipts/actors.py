"""Who did it: the actors the receipts record on events, holds and opt-outs."""

ACTOR_SMS = "sms"  # the debtor, by text message
ACTOR_IVR = "ivr"  # the debtor, on a call's keypad
ACTOR_EMAIL = "email"  # the debtor's mail system (one-click unsubscribe, bounce)
ACTOR_SYSTEM = "system"  # the dispatcher itself (automatic replies, expired promises)
