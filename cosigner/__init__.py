"""cosigner: a fail-closed co-signer daemon for the 1BitPay merchant API."""

__version__ = "0.1.0"
