"""One call to a milvus-fleet API over mutual TLS, as any HTTPS client would make it.
Prints the HTTP status and the body on one line each.

    python3 api_call.py HOST PORT METHOD PATH BODY CA_CERT [CERT KEY]
"""

import http.client
import ssl
import sys

host, port, method, path, body, ca = sys.argv[1:7]
context = ssl.create_default_context(cafile=ca)
# The node certificates name the node and its addresses; the test calls by address.
context.check_hostname = False
if len(sys.argv) > 8:
    context.load_cert_chain(sys.argv[7], sys.argv[8])
connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
connection.request(method, path, body=body or None, headers={"content-type": "application/json"})
answer = connection.getresponse()
print(answer.status)
print(answer.read().decode(errors="replace").replace("\n", " "))
