"""Order-2 estimators: directions preconditioned by curvature (Hessian–vector products and friends)."""
