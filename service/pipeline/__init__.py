"""The one road: decode -> plan -> run tiles -> crop or stitch -> encode, with a sync and an
async face over one tile-runner protocol; request parameters; what a request costs.

May import: service.errors, service.contract, service.protocol, service.codec.
Never service.engine (runners are passed in), never HTTP.
"""
