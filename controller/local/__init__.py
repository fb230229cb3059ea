"""Local tooling: what runs things on this machine rather than serving or rolling out.

Starting processes (a gateway, Prometheus) on loopback ports, the traffic generator, the demo and
the local stack. The tests and benchmarks use them too. Nothing that serves or rolls out imports
this package, and the images leave it out (.dockerignore), so a gateway pod carries none of it.
"""
