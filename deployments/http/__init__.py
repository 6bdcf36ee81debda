"""HTTP edge: protocol models, request validation, errors, body/auth guards, image encoding (runs in the ingress)."""
