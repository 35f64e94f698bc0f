"""cosigner.callbacks: receiving 1BitPay's C2C order callbacks (DESIGN section 10).

:mod:`~cosigner.callbacks.verify` checks a request without I/O,
:mod:`~cosigner.callbacks.listener` is the ASGI app that records verified callbacks
in the order journal (:mod:`cosigner.store.orders`) before answering, and
:mod:`~cosigner.callbacks.forwarder` delivers the journal's outbox to the
merchant's backend.  The daemon (:mod:`cosigner.daemon.callbacks`) wires them.
"""
