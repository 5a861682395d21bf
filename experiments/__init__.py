"""The controlled grid that answers the paper's question (`python -m experiments.reproduce`) and its tables and plots."""
