"""The model catalog and prices.

Owns: model figures (encoding, context window, input and output caps, provider, image
rule, Claude text margin) from ``data/models.json`` with their sources (docs/catalog.md),
the names models go by on other platforms (:mod:`.names`), what the price data knows of
a model (:mod:`.price_data`), and the cost of a usage in ``Decimal`` USD.
May import: errors. Nothing else of guardrail.
"""
