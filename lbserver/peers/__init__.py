"""The exchange with peer balancers: each pick as it happens, and the admin's drains."""
