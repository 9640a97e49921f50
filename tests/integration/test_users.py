"""test_users: the users API (list, get, create, replace, delete) against real PostgreSQL."""
import atexit
import json
import os
import uuid

from tenkharness import Tenkd, need_db, psql

# the admin listener's default port may be taken by another instance
NO_ADMIN = "[admin]\nlisten =\n"
_srv = [None]


def _stop_shared():
    if _srv[0] is not None:
        _srv[0].stop()


atexit.register(_stop_shared)


def server():
    need_db()
    if _srv[0] is None or _srv[0].proc.poll() is not None:
        _srv[0] = Tenkd(workers=2, conf=NO_ADMIN).start()
    return _srv[0]


def req(method, path, body=None, ctype="application/json"):
    headers = {"Content-Type": ctype} if ctype and body is not None else {}
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    st, h, b = server().request(method, path, headers=headers, body=body)
    return st, h, (json.loads(b) if b and h.get("content-type") == "application/json" else b)


def unique_email():
    return "it-%s@example.com" % uuid.uuid4().hex


def test_list_default_and_keyset_pagination():
    st, h, arr = req("GET", "/users")
    assert st == 200 and isinstance(arr, list) and len(arr) == 10, (st, arr)
    ids = [u["id"] for u in arr]
    assert ids == sorted(ids)
    assert set(arr[0]) == {"id", "name", "email"}
    st, h, page = req("GET", "/users?limit=3&after_id=%d" % ids[4])
    assert st == 200 and [u["id"] for u in page] == ids[5:8], page
    assert h["link"] == '</users?limit=3&after_id=%d>; rel="next"' % ids[7], h
    st, _, page = req("GET", "/users?limit=100")
    assert st == 200 and len(page) == 100
    st, _, page = req("GET", "/users?limit=1&after_id=999999999999")
    assert st == 200 and page == []


def test_list_bad_parameters():
    for q in ("limit=0", "limit=101", "limit=abc", "limit=-1", "limit=", "after_id=-1", "after_id=x",
              "after_id=1.5", "limit=%zz"):
        st, _, body = req("GET", "/users?" + q)
        assert st == 400, (q, st, body)
        assert body["error"], body


def test_get_one():
    st, _, u = req("GET", "/users/1")
    assert st == 200 and u["id"] == 1 and u["email"] and "created_at" in u, u
    assert u["created_at"].endswith("Z") and "T" in u["created_at"]
    st, _, body = req("GET", "/users/999999999")
    assert st == 404 and body["error"]
    for bad in ("abc", "0", "-1", "1.5", "1e3", "%31", "99999999999999999999999"):
        st, _, body = req("GET", "/users/" + bad)
        assert st == 400, (bad, st, body)


def test_create_get_replace_delete():
    email = unique_email()
    st, h, u = req("POST", "/users", {"name": "Ada", "email": email})
    assert st == 201, (st, u)
    assert h["location"] == "/users/%d" % u["id"], h
    assert u["name"] == "Ada" and u["email"] == email
    st, _, got = req("GET", h["location"])
    assert st == 200 and got == u
    # duplicate email
    st, _, body = req("POST", "/users", {"name": "Other", "email": email})
    assert st == 409, (st, body)
    # replace
    email2 = unique_email()
    st, _, u2 = req("PUT", "/users/%d" % u["id"], {"name": "Ada L.", "email": email2})
    assert st == 200 and u2["name"] == "Ada L." and u2["email"] == email2 and u2["id"] == u["id"]
    assert psql("select name from users where id = %d" % u["id"]) == "Ada L."
    st, _, body = req("PUT", "/users/999999999", {"name": "x", "email": unique_email()})
    assert st == 404, st
    st, _, body = req("PUT", "/users/1", {"name": "x", "email": email2})
    assert st == 409, (st, body)
    st, _, body = req("PUT", "/users/abc", {"name": "x", "email": unique_email()})
    assert st == 400
    # delete
    st, h, body = req("DELETE", "/users/%d" % u["id"])
    assert st == 204 and body == b"", (st, body)
    st, _, _ = req("GET", "/users/%d" % u["id"])
    assert st == 404
    st, _, _ = req("DELETE", "/users/%d" % u["id"])
    assert st == 404
    st, _, _ = req("DELETE", "/users/x")
    assert st == 400


def test_strings_stored_and_returned_exactly():
    names = ['quote " and \\ backslash', "Robert'); DROP TABLE users;--", "émile 日本語 🎉",
             "tab\there\nnewline \u0001 ctrl", "</script><b>x</b>", "  spaces  ", "a" * 100, "é" * 100]
    for name in names:
        email = unique_email()
        st, h, u = req("POST", "/users", {"name": name, "email": email})
        assert st == 201, (name, st, u)
        assert u["name"] == name, (name, u["name"])
        st, _, got = req("GET", h["location"])
        assert got["name"] == name
        assert psql("select count(*) from users where id = %d and name = $q$%s$q$" % (u["id"], name)) == "1"
        req("DELETE", h["location"])
    assert int(psql("select count(*) from users where id <= 10000")) > 0  # table survived


def test_create_validation():
    good = {"name": "Bob", "email": unique_email()}
    cases = [
        (415, json.dumps(good), None),
        (415, json.dumps(good), "text/plain"),
        (415, json.dumps(good), "application/jsonx"),
        (400, "{", "application/json"),
        (400, "[1,2]", "application/json"),
        (400, '"str"', "application/json"),
        (400, "", "application/json"),
        (400, json.dumps({"email": unique_email()}), "application/json"),
        (400, json.dumps({"name": "", "email": unique_email()}), "application/json"),
        (400, json.dumps({"name": "x" * 101, "email": unique_email()}), "application/json"),
        (400, json.dumps({"name": 5, "email": unique_email()}), "application/json"),
        (400, json.dumps({"name": "x", "email": "not-an-email"}), "application/json"),
        (400, json.dumps({"name": "x", "email": "a b@example.com"}), "application/json"),
        (400, json.dumps({"name": "x", "email": "a@b@example.com"}), "application/json"),
        (400, json.dumps({"name": "x", "email": "@example.com"}), "application/json"),
        (400, json.dumps({"name": "x", "email": "a@" + "b" * 260 + ".com"}), "application/json"),
        (400, json.dumps({"name": "x", "email": None}), "application/json"),
        (400, '{"name":"nul\\u0000here","email":"%s"}' % unique_email(), "application/json"),
        (400, json.dumps({"name": "x", "email": unique_email()}) + " garbage", "application/json"),
        (400, json.dumps({"name": "x", "email": unique_email()}) + "{}", "application/json"),
    ]
    for want, body, ctype in cases:
        headers = {"Content-Type": ctype} if ctype else {}
        st, h, b = server().request("POST", "/users", headers=headers, body=body)
        assert st == want, (want, st, body[:80], ctype, b[:200])
        assert json.loads(b)["error"]
    # charset parameter is fine
    st, _, _ = server().request("POST", "/users", headers={"Content-Type": "application/json; charset=utf-8"},
                                body=json.dumps(good))
    assert st == 201, st
    # trailing whitespace after the object is fine
    st, _, _ = server().request("POST", "/users", headers={"Content-Type": "application/json"},
                                body=json.dumps({"name": "Bob", "email": unique_email()}) + " \r\n")
    assert st == 201, st
    psql("delete from users where email = '%s'" % good["email"])
