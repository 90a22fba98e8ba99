"""The local platform's endpoints, one module per concept; `local/app.py` routes to them.

Each is a plain `async def endpoint(request)` that reaches the platform through
`common.platform_of(request)`.
"""
