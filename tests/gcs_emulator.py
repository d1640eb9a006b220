"""A GCS emulator on 127.0.0.1 for the tests: `gcp-storage-emulator` (PyPI) in a subprocess.

It speaks the GCS JSON API, which is what tensorstore (orbax's arrays) and gcsfs (etils.epath
with EPATH_USE_TF=false: orbax's metadata and alexnet_jax/runtime/paths.py) call. TensorFlow's
own GCS file system cannot be pointed at it (its endpoints are compiled in), so a run under
`env()` reaches gs:// through those two only.

The emulator (2026.7.19) ignores generation preconditions and sends no `x-goog-generation` header
with an object's content, which tensorstore needs: OCDBT commits its manifest with
`ifGenerationMatch` and revalidates what it read with `ifGenerationNotMatch`, and without them a
process's second checkpoint fails ("Malformed StorageGeneration"). So the emulator is started by
this file (`python tests/gcs_emulator.py PORT BUCKET`), which wraps each of its object handlers to
behave as the GCS JSON API documents (https://cloud.google.com/storage/docs/request-preconditions,
https://cloud.google.com/storage/docs/json_api/v1/objects/get, .../objects/insert,
https://cloud.google.com/storage/docs/xml-api/reference-headers#xgooggeneration):
- `ifGenerationMatch=N`: the request fails with 412 unless the live object's generation is N;
  N=0 means "no live object" (create only if absent);
- `ifGenerationNotMatch=N`: when the live generation is N, a read answers 304 Not Modified and a
  write fails with 412;
- `ifMetagenerationMatch` / `ifMetagenerationNotMatch`: the same on the metageneration;
- a read of an object's content carries `x-goog-generation` and `x-goog-metageneration`.
A request on an absent object keeps the emulator's answer (404 for a read or delete).
The server handles one request at a time, so a check and the write it guards do not interleave.
"""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

AVAILABLE = importlib.util.find_spec('gcp_storage_emulator') is not None
MISSING = ('the GCS emulator package gcp-storage-emulator is not installed '
           '(pip install -r requirements.txt)')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Emulator:
  """The emulator with one bucket, `bucket`, in memory; `env()` points a program at it."""

  def __init__(self, bucket: str = 'alexnet-test'):
    self.bucket = bucket
    self.port = _free_port()
    self.url = f'http://127.0.0.1:{self.port}'
    self._proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(self.port), bucket],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
      try:
        with urllib.request.urlopen(self.url + '/', timeout=2) as r:
          if r.read() == b'OK':
            break
      except OSError:
        if self._proc.poll() is not None or time.monotonic() > deadline:
          self.stop()
          raise RuntimeError(f'the GCS emulator did not start on {self.url}')
        time.sleep(0.1)

  def env(self) -> dict:
    """Environment variables that send tensorstore and etils.epath (via gcsfs) to it,
    anonymously."""
    return {'TENSORSTORE_GCS_HTTP_URL': self.url,
            'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'anonymous',  # tensorstore: no credential lookup
            'STORAGE_EMULATOR_HOST': self.url,  # gcsfs: this endpoint, anonymous
            'EPATH_USE_TF': 'false'}  # etils.epath: gcsfs, not TensorFlow's GCS file system

  def objects(self, prefix: str = '') -> list[str]:
    """The names of the bucket's objects under `prefix`, as the emulator's JSON API lists them."""
    names, token = [], None
    while True:
      query = {'prefix': prefix, **({'pageToken': token} if token else {})}
      url = f'{self.url}/storage/v1/b/{self.bucket}/o?{urllib.parse.urlencode(query)}'
      with urllib.request.urlopen(url, timeout=30) as r:
        page = json.load(r)
      names += [item['name'] for item in page.get('items', [])]
      token = page.get('nextPageToken')
      if not token:
        return names

  def read(self, name: str) -> bytes:
    """An object's content, downloaded through the emulator's API."""
    url = (f'{self.url}/download/storage/v1/b/{self.bucket}/o/'
           f'{urllib.parse.quote(name, safe="")}?alt=media')
    with urllib.request.urlopen(url, timeout=30) as r:
      return r.read()

  def write(self, name: str, data: bytes) -> None:
    """Replaces an object's content, uploaded through the emulator's API."""
    url = (f'{self.url}/upload/storage/v1/b/{self.bucket}/o?uploadType=media&'
           f'{urllib.parse.urlencode({"name": name})}')
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method='POST'),
                                timeout=30) as r:
      r.read()

  def stop(self) -> None:
    if self._proc.poll() is None:
      self._proc.terminate()
      try:
        self._proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        self._proc.wait()


_PRECONDITIONS = ('ifGenerationMatch', 'ifGenerationNotMatch', 'ifMetagenerationMatch',
                  'ifMetagenerationNotMatch')


def _object_name(request):
  """The object a request is about, or None (bucket requests, resumable chunks)."""
  name = (request.params or {}).get('object_id')
  if name is None and 'name' in request.query:
    name = request.query['name'][0]
  if (name is None and request.method == 'POST' and request.query.get('uploadType') == ['multipart']
      and isinstance(request.data, dict)):
    name = request.data.get('meta', {}).get('name')
  return name


def _precondition_status(query: dict, live: dict | None, is_read: bool):
  """The HTTP status a failed precondition answers with (None: all hold). `live`: the live
  object's resource, None if there is none."""
  from http import HTTPStatus  # pylint: disable=import-outside-toplevel
  numbers = {'ifGenerationMatch': 'generation', 'ifGenerationNotMatch': 'generation',
             'ifMetagenerationMatch': 'metageneration',
             'ifMetagenerationNotMatch': 'metageneration'}
  for key, field in numbers.items():
    if key not in query:
      continue
    wanted = int(query[key][0])
    current = int(live[field]) if live is not None else None
    if key.endswith('NotMatch'):
      if current is not None and current == wanted:
        return HTTPStatus.NOT_MODIFIED if is_read else HTTPStatus.PRECONDITION_FAILED
    elif key == 'ifGenerationMatch' and wanted == 0:
      if current is not None:
        return HTTPStatus.PRECONDITION_FAILED
    elif current is not None and current != wanted:
      return HTTPStatus.PRECONDITION_FAILED
  return None


def _honouring_preconditions(handler):
  def wrapped(request, response, storage, *args, **kwargs):
    from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=import-outside-toplevel
    bucket, name = (request.params or {}).get('bucket_name'), _object_name(request)
    live = None
    if bucket is not None and name is not None:
      try:
        live = storage.get_file_obj(bucket, name)
      except NotFound:
        live = None
      if any(key in request.query for key in _PRECONDITIONS):
        status = _precondition_status(request.query, live, request.method == 'GET')
        if status is not None:
          response.status = status
          return None
    result = handler(request, response, storage, *args, **kwargs)
    if request.method == 'GET' and live is not None and response.status.value == 200:
      response['x-goog-generation'] = str(live['generation'])
      response['x-goog-metageneration'] = str(live['metageneration'])
    return result
  return wrapped


def serve(port: int, bucket: str) -> None:
  """The emulator, in memory, with `bucket`, its object handlers honouring preconditions."""
  from gcp_storage_emulator import server  # pylint: disable=import-outside-toplevel
  server.HANDLERS = tuple((regex, {method: _honouring_preconditions(h) for method, h in table.items()})
                          for regex, table in server.HANDLERS)
  server.create_server('127.0.0.1', port, in_memory=True, default_bucket=bucket).run()


if __name__ == '__main__':
  serve(int(sys.argv[1]), sys.argv[2])
