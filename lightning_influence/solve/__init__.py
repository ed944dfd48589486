"""Curvature operators, operator algebra, estimators, solvers, EK-FAC: the influence solve."""
