"""etcd's Auth service (users, roles, permissions, auth enable) over ``EtcdStore``.

pyetcd (etcd-sdk-python 0.0.7, python-etcd3's API) has no methods for these calls,
but it ships the generated gRPC stubs; this adapter builds the requests and sends them
through ``EtcdStore.auth_rpc``, so they get the same endpoint failover, TLS and token
as every other call (no ``etcdctl`` binary needed on the admin's machine).
"""

from __future__ import annotations

from typing import Any

from pyetcd import etcdrpc
from pyetcd.etcdrpc import auth_pb2

from gridtool.auth.rules import Access, Current, Permission, Step
from gridtool.errors import AuthError
from gridtool.registry.etcdstore import EtcdStore

_TO_PB = {Access.READ: auth_pb2.Permission.READ, Access.WRITE: auth_pb2.Permission.WRITE,
          Access.READWRITE: auth_pb2.Permission.READWRITE}
_FROM_PB = {v: k for k, v in _TO_PB.items()}


class EtcdAuth:
    """Read and change etcd's users and roles (needs root once auth is enabled)."""

    def __init__(self, store: EtcdStore) -> None:
        self.store = store

    def _rpc(self, method: str, request: object, exists_ok: bool = False) -> Any:
        """One Auth call; the reply is an (untyped) pyetcd protobuf message."""
        return self.store.auth_rpc(method, request, exists_ok)

    def users(self) -> list[str]:
        return list(self._rpc("UserList", etcdrpc.AuthUserListRequest()).users)

    def roles(self) -> list[str]:
        return list(self._rpc("RoleList", etcdrpc.AuthRoleListRequest()).roles)

    def user_roles(self, name: str) -> frozenset[str]:
        return frozenset(self._rpc("UserGet", etcdrpc.AuthUserGetRequest(name=name)).roles)

    def role_permissions(self, role: str) -> frozenset[Permission]:
        resp = self._rpc("RoleGet", etcdrpc.AuthRoleGetRequest(role=role))
        return frozenset(Permission(p.key.decode(), _FROM_PB[p.permType],
                                    p.range_end.decode("latin-1")) for p in resp.perm)

    def current(self, roles: set[str], users: set[str]) -> Current:
        """What etcd holds for the given roles and users (absent ones are left out)."""
        have_roles, have_users = set(self.roles()), set(self.users())
        return Current({r: self.role_permissions(r) for r in roles & have_roles},
                       {u: self.user_roles(u) for u in users & have_users})

    def apply(self, step: Step, password: str | None = None) -> None:
        """Carry out one repair step; ``add_user`` needs the new user's ``password``."""
        if step.op == "add_role":
            self._rpc("RoleAdd", etcdrpc.AuthRoleAddRequest(name=step.name), exists_ok=True)
        elif step.op == "add_user":
            if not password:
                raise ValueError(f"add_user {step.name}: no password")
            if self._rpc("UserAdd", etcdrpc.AuthUserAddRequest(
                    name=step.name, password=password), exists_ok=True) is None:
                self.change_password(step.name, password)  # whoever added it: this password
        elif step.op == "grant_role":
            self._rpc("UserGrantRole",
                      etcdrpc.AuthUserGrantRoleRequest(user=step.name, role=str(step.arg)))
        elif step.op == "revoke_role":
            self._rpc("UserRevokeRole",
                      etcdrpc.AuthUserRevokeRoleRequest(name=step.name, role=str(step.arg)))
        elif step.op in ("grant_permission", "revoke_permission"):
            perm = step.arg
            assert isinstance(perm, Permission)
            if step.op == "grant_permission":
                pb = auth_pb2.Permission(permType=_TO_PB[perm.access], key=perm.key.encode(),
                                         range_end=perm.range_end.encode("latin-1"))
                self._rpc("RoleGrantPermission",
                          etcdrpc.AuthRoleGrantPermissionRequest(name=step.name, perm=pb))
            else:
                self._rpc("RoleRevokePermission", etcdrpc.AuthRoleRevokePermissionRequest(
                    role=step.name, key=perm.key, range_end=perm.range_end))
        else:
            raise ValueError(f"unknown auth step {step.op!r}")

    def delete_user(self, name: str) -> None:
        self._rpc("UserDelete", etcdrpc.AuthUserDeleteRequest(name=name))

    def delete_role(self, name: str) -> None:
        self._rpc("RoleDelete", etcdrpc.AuthRoleDeleteRequest(role=name))

    def change_password(self, user: str, password: str) -> None:
        self._rpc("UserChangePassword",
                  etcdrpc.AuthUserChangePasswordRequest(name=user, password=password))

    def check_password(self, user: str, password: str) -> bool:
        """Whether etcd accepts ``user``/``password`` (auth must be enabled)."""
        try:
            self._rpc("Authenticate", etcdrpc.AuthenticateRequest(name=user, password=password))
        except AuthError:
            return False
        return True

    def enable(self) -> None:
        self._rpc("AuthEnable", etcdrpc.AuthEnableRequest())
