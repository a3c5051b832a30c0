"""Checks the contract files themselves, before anything runs against a gateway.

- api/schemas/messages.json is a valid JSON Schema 2020-12 document, and every
  example in it matches its own definition and exactly one branch of the
  ClientMessage / ServerMessage / SseMessage unions;
- every message example in api/asyncapi.yaml matches its payload schema (the
  AsyncAPI parser resolves the references but does not check examples);
- every request and response example in api/openapi.yaml matches its schema.

(The documents' own syntax is checked by openapi-spec-validator and the
AsyncAPI parser, see run.sh.)
"""

import json
import pathlib
import sys

import jsonschema
import referencing
import yaml

API = pathlib.Path(__file__).resolve().parents[2] / "api"
problems = []
count = 0


def load(uri):
    path = API / uri.removeprefix("file://").removeprefix(str(API) + "/")
    text = path.read_text()
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def retrieve(uri):
    return referencing.Resource.from_contents(
        load(uri), default_specification=referencing.jsonschema.DRAFT202012
    )


registry = referencing.Registry(retrieve=retrieve)
MESSAGES = f"file://{API}/schemas/messages.json"
OPENAPI = f"file://{API}/openapi.yaml"
ASYNCAPI = f"file://{API}/asyncapi.yaml"


def pointer(*parts):
    return "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def check(what, uri, instance):
    """Validates `instance` against the schema at `uri` (a document and a JSON pointer into it)."""
    global count
    count += 1
    validator = jsonschema.Draft202012Validator({"$ref": uri}, registry=registry)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]
    if errors:
        problems.append(f"{what}: {errors}")


messages = load(MESSAGES)
jsonschema.Draft202012Validator.check_schema(messages)
for name, definition in messages["$defs"].items():
    for i, example in enumerate(definition.get("examples", [])):
        check(f"messages.json {name} example {i}", f"{MESSAGES}#/$defs/{name}", example)
        if isinstance(example, dict) and "type" in example:
            union = "ClientMessage" if name in ("Subscribe", "Unsubscribe", "Ping", "Refresh") else "ServerMessage"
            check(f"messages.json {name} example {i} as {union}", f"{MESSAGES}#/$defs/{union}", example)

asyncapi = load(ASYNCAPI)
for name, message in asyncapi["components"]["messages"].items():
    for i, example in enumerate(message.get("examples", [])):
        where = f"{ASYNCAPI}#/" + pointer("components", "messages", name, "payload")
        check(f"asyncapi {name} example {example.get('name', i)}", where, example["payload"])

openapi = load(OPENAPI)


def deref(node):
    """Follows local `$ref`s of OpenAPI objects (responses), not of schemas."""
    while isinstance(node, dict) and "$ref" in node and node["$ref"].startswith("#/"):
        target = openapi
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


for path, item in openapi["paths"].items():
    for method, operation in item.items():
        bodies = [("request", ("paths", path, method, "requestBody"), operation.get("requestBody", {}))]
        for status, response in operation.get("responses", {}).items():
            at = ("paths", path, method, "responses", status)
            if "$ref" in response:
                at = tuple(response["$ref"][2:].split("/"))
            bodies.append((f"response {status}", at, deref(response)))
        for label, at, body in bodies:
            for media, content in body.get("content", {}).items():
                if "json" not in media or "schema" not in content:
                    continue
                examples = [("example", content["example"])] if "example" in content else []
                examples += [(k, v["value"]) for k, v in content.get("examples", {}).items()]
                for name, value in examples:
                    where = f"{OPENAPI}#/" + pointer(*at, "content", media, "schema")
                    check(f"openapi {method.upper()} {path} {label} {name}", where, value)

if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"documents: messages.json is valid JSON Schema 2020-12; {count} examples match their schemas")
