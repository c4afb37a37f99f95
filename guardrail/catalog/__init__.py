"""The model catalog and prices.

Owns: model figures (encoding, context window, max output, provider) from
``data/models.json`` and the price data, and the cost of a usage in ``Decimal`` USD.
May import: errors. Nothing else of guardrail.
"""
