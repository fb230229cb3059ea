"""``distill-canary simulate``: thousands of rollouts through the controller's own analysis and
decision code, with simulated traffic in place of gateways, to measure how often it decides right.
"""
