"""Ahead-of-time compiles for accelerators that are not present, and cost reports from them."""
