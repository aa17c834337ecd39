"""IQ sources. Every adapter yields ``IQBlock`` and nothing else; ``KINDS`` maps config kinds to them."""

from receivers.base import DropCounter, Flags, IQBlock, Receiver, ReceiverContext, TallyDropCounter
from receivers.registry import KINDS, adapter_class, open_receiver

__all__ = [
    "DropCounter",
    "Flags",
    "IQBlock",
    "KINDS",
    "Receiver",
    "ReceiverContext",
    "TallyDropCounter",
    "adapter_class",
    "open_receiver",
]
