"""Order-3 estimators: steps from models that use third-order (cubic) regularization."""
