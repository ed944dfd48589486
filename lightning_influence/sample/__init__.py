"""The Hessian subset: capture the candidates, let a sampler pick, weigh."""
