"""Tuning a grafted network: names and rules, layer groups, freezing, optimizer parameter groups and their
sync, and the plan table that describes them."""
