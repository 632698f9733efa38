"""Prices, cost arithmetic and the durable usage ledger."""
