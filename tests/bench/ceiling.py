"""The ceiling of the API's stack on this machine: a bare Flask app answering one VM-sized JSON,
served by `tests.bench.api` under the same gunicorn settings (config, workers, worker class) as
ucloud-api, so that each of ucloud's figures reads as a share of what Flask and gunicorn alone do."""

from __future__ import annotations

import uuid

from flask import Flask, Response, jsonify

from ucloud_api.views.vms import shown
from ucloud_common.specs import Specs
from ucloud_common.states import Status
from ucloud_common.vm import VM

app = Flask("ceiling")
# A VM as GET /api/v1/vms/<uuid> shows one of the benchmark's (no NICs, no events).
_VM = {**shown(VM(uuid=str(uuid.uuid4()), owner="user0", name="vm0", specs=Specs(cpu=2, ram=4, ssd=40),
                  image="tiny", status=Status.RUNNING, hostname="/v1/host/h0"), {}), "events": []}


@app.get("/vm")
def vm() -> Response:
    return jsonify(_VM)
