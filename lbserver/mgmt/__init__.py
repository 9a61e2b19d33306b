"""The management service: status, history, metrics, dashboard, admin actions, and lbctl."""
