"""The ``scanvi`` family: scvi-tools scANVI reference mapping with scArches query surgery."""
