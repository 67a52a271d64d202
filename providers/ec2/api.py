"""The EC2 API as healer's EC2 backend calls it: raw requests through libcloud's connections.

Requests libcloud has no method for, or sends in a form only some EC2 endpoints accept
(``ex_create_tags`` numbers its lists from 0), are sent through the same libcloud connection
(signing, retries, XML parsing and error mapping are libcloud's), built here with 1-based lists as
the EC2 API documents them. Every resource is tagged when it is created (``TagSpecification`` on
the create call), so nothing healer makes is ever visible untagged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any
from xml.etree.ElementTree import Element

from libcloud.compute.base import NodeDriver
from libcloud.compute.drivers.ec2 import NAMESPACE
from libcloud.loadbalancer.drivers.elb import ROOT as ELB_ROOT
from libcloud.loadbalancer.drivers.elb import ElasticLBDriver
from libcloud.utils import xml as _xml

# libcloud's XML helpers are untyped; these names give them the types they have.
findall: Callable[..., list[Element]] = _xml.findall
findtext: Callable[..., str | None] = _xml.findtext
fixxpath: Callable[..., str] = _xml.fixxpath


def ec2_of(driver: NodeDriver) -> Any:
    # The EC2 driver's ex_* methods are not on the NodeDriver base class.
    return driver


def text_of(element: Element, xpath: str, namespace: str = NAMESPACE) -> str | None:
    return findtext(element=element, xpath=xpath, namespace=namespace)


class VpcRef:
    """The one attribute libcloud's ex_* methods read from a VPC object."""

    def __init__(self, rid: str) -> None:
        self.id = rid


class Ec2Api:
    """The EC2 and ELB connections of one backend, and the raw calls made through them."""

    def __init__(self, make_elb: Callable[[], ElasticLBDriver]) -> None:
        self._make_elb = make_elb
        # libcloud connections are not safe to share between threads: one ELB driver per worker.
        self._local = threading.local()
        self._made: list[ElasticLBDriver] = []
        self._made_lock = threading.Lock()

    # -- raw calls -----------------------------------------------------------------------------

    def _call(self, driver: NodeDriver, params: Mapping[str, Any]) -> Element:
        ec2 = ec2_of(driver)
        return ec2.connection.request(ec2.path, params=dict(params)).object  # type: ignore[no-any-return]

    def _elb(self) -> ElasticLBDriver:
        elb = getattr(self._local, "elb", None)
        if elb is None:
            elb = self._make_elb()
            self._local.elb = elb
            with self._made_lock:
                self._made.append(elb)
        return elb

    def close(self) -> None:
        with self._made_lock:
            made, self._made = self._made, []
        for elb in made:
            # libcloud has no close(); its HTTP connection holds a requests Session.
            session = getattr(getattr(elb.connection, "connection", None), "session", None)
            if session is not None:
                session.close()

    def _elb_call(self, params: Mapping[str, Any]) -> Element:
        return self._elb().connection.request(ELB_ROOT, params=dict(params)).object  # type: ignore[no-untyped-call,no-any-return]

    @staticmethod
    def _tag_spec(resource_type: str, name: str, tags: Mapping[str, str]) -> dict[str, str]:
        params = {"TagSpecification.1.ResourceType": resource_type}
        for n, (key, value) in enumerate({"Name": name, **tags}.items(), start=1):
            params[f"TagSpecification.1.Tag.{n}.Key"] = key
            params[f"TagSpecification.1.Tag.{n}.Value"] = value
        return params

    @staticmethod
    def _tag_filters(driver: NodeDriver, tags: Mapping[str, str]) -> dict[str, str]:
        return ec2_of(driver)._build_filters({f"tag:{k}": v for k, v in tags.items()})  # type: ignore[no-any-return]
