"""Rollout notifications: receivers (``receiver``), formats (one module each, picked in
``formats``), delivery through a bounded queue per receiver (``delivery``) and the fan-out
(``notifications``)."""

from controller.notify.notifications import Notifications, NotifyError
from controller.notify.receiver import Receiver

__all__ = ["Notifications", "NotifyError", "Receiver"]
