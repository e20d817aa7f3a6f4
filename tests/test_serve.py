"""serve.py: the page's server answers its page and POST /api/predict, with the ages of
`predict --crop auto` and the errors the model's test run measured at each age; it refuses
every bad request with a JSON error and lives on, answers eight clients at once, and reads
or writes no file while it answers. The pictures are made here from the archive's faces:
nothing face-like is committed."""

import builtins
import csv
import http.client
import io
import json
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

import photos
import readout
import serve
import train_loop
import utk_data

REPOSITORY = Path(__file__).resolve().parents[1]


# --- pictures made from the archive's faces -----------------------------------------------


def face_picture(face, scale, left, top, size=(600, 800), seed=0):
    """A noisy picture of `size` (height, width) with a face (a 200x200 RGB array) resized
    by `scale` and pasted at (left, top), as tests/test_photos.py makes them."""
    rng = np.random.default_rng(seed)
    picture = rng.integers(80, 170, (*size, 3), dtype=np.uint8)
    side = round(200 * scale)
    resized = np.asarray(Image.fromarray(face).resize((side, side), Image.LANCZOS))
    picture[top : top + side, left : left + side] = resized
    return picture


def encoded(picture, kind="JPEG", **options):
    """The bytes of an RGB array saved as a JPEG or PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format=kind, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def faces(real_folder):
    """Six real test-split faces (200x200 RGB arrays) and their records."""
    records, _ = utk_data.load_records(real_folder, verbose=False)
    _, _, test = utk_data.split_records(records)
    chosen = [test[i] for i in np.random.default_rng(5).permutation(len(test))[:6]]
    return chosen, [photos.read_photo(record.path) for record in chosen]


@pytest.fixture(scope="module")
def pictures(faces):
    """{name: bytes} of JPEG and PNG pictures: faces pasted into larger pictures (one of
    them turned by its EXIF tag), two faces in one, an archive face as it is, one enlarged
    to 320 pixels, and a picture without a face."""
    records, images = faces
    two = face_picture(images[3], 1.1, 40, 150, size=(520, 760), seed=3)
    two[160:380, 470:690] = np.asarray(Image.fromarray(images[4]).resize((220, 220)))
    turned = Image.fromarray(face_picture(images[5], 1.2, 300, 60, seed=5))
    exif = Image.Exif()
    exif[0x0112] = 8  # Shown after a quarter turn: stored turned the other way.
    buffer = io.BytesIO()
    turned.rotate(-90, expand=True).save(buffer, format="JPEG", exif=exif, quality=92)
    return {
        "one.jpg": encoded(face_picture(images[0], 1.0, 60, 300, seed=0), quality=92),
        "large.png": encoded(face_picture(images[1], 1.6, 400, 40, seed=1), "PNG"),
        "small.jpg": encoded(face_picture(images[2], 0.6, 500, 400, seed=2)),
        "two.png": encoded(two, "PNG"),
        "turned.jpg": buffer.getvalue(),
        "crop.jpg": Path(records[0].path).read_bytes(),
        "big_crop.png": encoded(
            np.asarray(Image.fromarray(images[1]).resize((320, 320))), "PNG"
        ),
        "wall.jpg": encoded(
            np.random.default_rng(9).integers(0, 255, (300, 420, 3), np.uint8)
        ),
    }


# --- the server ---------------------------------------------------------------------------


def _test_predictions(path):
    """A test_predictions.csv of 400 made-up test faces, 50 predicted in each range of
    ages up to 79, with errors that grow with the age."""
    rng = np.random.default_rng(0)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            ["face", "age", "gender", "race", "predicted_no_tta"] + ["predicted_tta"]
        )
        for low in range(0, 80, 10):
            predicted = rng.uniform(low, low + 9.9, 50)
            true = np.maximum(predicted + rng.normal(0, 1 + low / 10, 50), 0)
            for number, (age, guess) in enumerate(zip(true, predicted)):
                writer.writerow([f"{low}-{number}", f"{age:.0f}", 0, 0, guess, guess])


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A small untrained network in a run folder with made-up test predictions. Its output
    layer is scaled up, so that its ages differ by years from picture to picture: a
    picture read, framed or read out otherwise than by `predict` would show."""
    folder = tmp_path_factory.mktemp("run")
    keras.utils.set_random_seed(3)
    config = train_loop.TrainConfig(arch="course_cnn", image_size=32)
    model = train_loop.make_model(config, initial_age=34.5)
    model.build((None, 32, 32, 3))
    output = model.get_layer("output").kernel
    output.assign(300 * output)
    model.save(folder / "model.keras")
    _test_predictions(folder / "test_predictions.csv")
    return folder / "model.keras"


@pytest.fixture(scope="module")
def server(model_path):
    """The page's server of the model, on 127.0.0.1 and a free port, in a thread."""
    server, _ = serve.start(model_path, port=0)
    yield server
    server.stop()


def request(server, method, path, body=None, headers=None, timeout=120):
    """(status, headers, body parsed as JSON when it is JSON) of one request."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body is not None and "Content-Length" not in (headers or {}):
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    if response.getheader("Content-Type") == "application/json":
        data = json.loads(data)
    return response.status, response.headers, data


def raw_request(server, data, close_after_sending=False):
    """(status, JSON body) of bytes sent as they are over a socket."""
    with socket.create_connection(server.server_address[:2], timeout=60) as client:
        client.sendall(data)
        if close_after_sending:
            client.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    assert b"Content-Type: application/json" in head, head
    return status, json.loads(body)


def predict(server, picture, content_type="image/jpeg"):
    """The JSON answer of POST /api/predict for a picture's bytes; fails unless 200."""
    status, _, answer = request(
        server, "POST", "/api/predict", picture, {"Content-Type": content_type}
    )
    assert status == 200, answer
    return answer


def assert_alive(server, picture):
    """The server still answers its page and a picture."""
    status, _, page = request(server, "GET", "/")
    assert status == 200 and b"<title>" in page
    assert predict(server, picture)["faces"]


# --- the page ---------------------------------------------------------------------------


def test_the_page_is_served_from_the_loopback(server):
    assert server.server_address[0] == "127.0.0.1"
    status, headers, page = request(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert page == (REPOSITORY / "page" / "index.html").read_bytes()
    assert "script-src 'sha256-" in headers["Content-Security-Policy"]
    assert request(server, "GET", "/index.html?from=here")[2] == page
    status, headers, body = request(server, "HEAD", "/")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(page)


@pytest.mark.parametrize(
    "path",
    [
        "/serve.py",
        "/../serve.py",
        "/../../../../etc/passwd",
        "//etc/passwd",
        "/%2e%2e/serve.py",
        "/..%2fserve.py",
        "/page/index.html",
        "/index.html/..",
        "/./index.html",
        "/%69ndex.html",
        "/api",
        "/api/predict/",
        "/" + "a" * 5000,
    ],
)
def test_paths_outside_the_page_are_not_found(server, path):
    status, _, answer = request(server, "GET", path)
    assert status == 404 and "no such page" in answer["error"]


def test_a_request_line_without_a_slash_is_refused(server):
    status, answer = raw_request(server, b"GET ../serve.py HTTP/1.0\r\n\r\n")
    assert status == 404 and "error" in answer
    status, answer = raw_request(server, b"HELLO\r\n\r\n")
    assert status == 400 and "error" in answer


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("GET", "/api/predict", "POST"),
        ("PUT", "/api/predict", "POST"),
        ("DELETE", "/", "GET, HEAD"),
        ("OPTIONS", "/api/predict", "POST"),
        ("PATCH", "/index.html", "GET, HEAD"),
        ("POST", "/", "GET, HEAD"),
        ("BREW", "/", "GET, HEAD"),
    ],
)
def test_wrong_methods_are_answered_405(server, method, path, allowed):
    status, headers, answer = request(server, method, path, b"")
    assert status == 405 and headers["Allow"] == allowed and "error" in answer


# --- bad requests -------------------------------------------------------------------------


def _png_header(width, height):
    """A PNG file whose header declares width x height pixels, with almost no data: a
    decoder that believed it would allocate them all."""

    def chunk(kind, data):
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\0" * 4096)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", data)
        + (chunk(b"IEND", b""))
    )


def _jpeg_claiming(jpeg, width, height):
    """A JPEG file whose frame header (SOF0) is changed to declare width x height."""
    start = jpeg.index(b"\xff\xc0") + 5  # Marker, length (2), precision (1).
    return jpeg[:start] + struct.pack(">HH", height, width) + jpeg[start + 4 :]


def _multipart(fields, boundary="----page-test"):
    """(body, content type) of a multipart form of {name: (file name, bytes)}."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
        f'filename="{file_name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        + data
        + b"\r\n"
        for name, (file_name, data) in fields.items()
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_every_bad_picture_gets_a_json_error_and_the_server_lives_on(server, pictures):
    good = pictures["one.jpg"]
    cut = pictures["large.png"]
    gif = io.BytesIO()
    Image.new("RGB", (300, 300)).save(gif, format="GIF")
    form, form_type = _multipart({"photo": ("one.jpg", good)})
    refused = {
        "plain text": (b"hello, not a picture", 400),
        "a GIF": (gif.getvalue(), 400),
        "a truncated PNG": (cut[: len(cut) // 2], 400),
        "a truncated JPEG": (good[: len(good) // 3], 400),
        # Small square: taken as it is, decoded by TensorFlow, not PIL.
        "a truncated face crop": (pictures["crop.jpg"][:3000], 400),
        "a PNG bomb": (_png_header(30_000, 30_000), 413),
        "a JPEG bomb": (_jpeg_claiming(good, 8_000, 8_000), 413),
        "a JPEG of 4 billion pixels": (_jpeg_claiming(good, 65_535, 65_535), 413),
        "a form without its image": (form, 400),
    }
    for name, (body, expected) in refused.items():
        content_type = form_type if name.startswith("a form") else "image/png"
        status, _, answer = request(
            server, "POST", "/api/predict", body, {"Content-Type": content_type}
        )
        assert status == expected and answer["error"], (name, status, answer)
        assert_alive(server, good)


def test_every_bad_request_gets_a_json_error_and_the_server_lives_on(server, pictures):
    good = pictures["one.jpg"]
    head = b"POST /api/predict HTTP/1.1\r\nHost: here\r\n"
    raw = {
        "a body over the limit": (
            head + f"Content-Length: {serve.MAX_BODY + 1}\r\n\r\n".encode(),
            413,
        ),
        "no length": (head + b"\r\n", 411),
        "a chunked body": (head + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 411),
        "a length that is no number": (head + b"Content-Length: -5\r\n\r\n", 400),
        "an empty body": (head + b"Content-Length: 0\r\n\r\n", 400),
        "a body cut short": (head + b"Content-Length: 5000\r\n\r\n" + good[:100], 400),
        "headers too long": (head + b"X-Long: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    }
    for name, (data, expected) in raw.items():
        status, answer = raw_request(server, data, close_after_sending=True)
        assert status == expected and answer["error"], (name, status, answer)
        assert_alive(server, good)


def test_a_multipart_form_field_image_is_read_as_the_body_is(server, pictures):
    body, content_type = _multipart(
        {"note": ("note.txt", b"hello"), "image": ("one.jpg", pictures["one.jpg"])}
    )
    answer = predict(server, body, content_type)
    plain = predict(server, pictures["one.jpg"])
    assert [face["age"] for face in answer["faces"]] == [
        face["age"] for face in plain["faces"]
    ]


def test_a_full_waiting_room_answers_503(server, pictures, monkeypatch):
    monkeypatch.setattr(server.ages, "slots", threading.BoundedSemaphore(1))
    server.ages.slots.acquire()
    status, headers, answer = request(
        server, "POST", "/api/predict", pictures["one.jpg"]
    )
    assert status == 503 and headers["Retry-After"] == "1" and answer["error"]
    server.ages.slots.release()
    assert predict(server, pictures["one.jpg"])["faces"]


def test_eight_clients_at_once_are_all_answered_as_one_alone_is(server, pictures):
    names = ["one.jpg", "two.png", "crop.jpg", "small.jpg"] * 2
    alone = {name: predict(server, pictures[name])["faces"] for name in set(names)}
    together = threading.Barrier(len(names), timeout=60)

    def client(name):
        together.wait()
        answer = predict(server, pictures[name])
        status, _, page = request(server, "GET", "/")
        return answer["faces"], status

    with ThreadPoolExecutor(len(names)) as pool:
        futures = [pool.submit(client, name) for name in names]
        answers = [future.result(timeout=300) for future in futures]
    for name, (faces, page_status) in zip(names, answers):
        assert page_status == 200
        assert [face["box"] for face in faces] == [face["box"] for face in alone[name]]
        ages = [face["age"] for face in faces]
        assert ages == pytest.approx([face["age"] for face in alone[name]], abs=0.01)


def test_answering_opens_no_file(server, pictures, monkeypatch):
    opened = []

    def watched(original):
        def open_file(file, *arguments, **options):
            opened.append(str(file))
            return original(file, *arguments, **options)

        return open_file

    monkeypatch.setattr(builtins, "open", watched(builtins.open))
    monkeypatch.setattr(io, "open", watched(io.open))
    for name in ("one.jpg", "crop.jpg", "turned.jpg", "wall.jpg"):
        predict(server, pictures[name])
    for path in ("/", "/index.html", "/serve.py", "/../README.md"):
        request(server, "GET", path)
    request(server, "POST", "/api/predict", b"not a picture")
    assert opened == []


# --- the ages -----------------------------------------------------------------------------


def _predicted_by_the_command(model_path, pictures, folder):
    """(predict's CSV rows, predict_paths' rows) of the pictures written into `folder`."""
    files = []
    for name, data in pictures.items():
        (folder / name).write_bytes(data)
        files.append(str(folder / name))
    out = folder / "ages.csv"
    command = ["predict", "--model", model_path, "--crop", "auto", "--out", out]
    assert train_loop.main([*command, *files]) == 0
    table = list(csv.DictReader(open(out)))
    assert list(table[0]) == [*photos.PREDICT_COLUMNS, *photos.NOTES_COLUMNS]
    model = readout.load_model(model_path)
    rows, skipped = photos.predict_paths(model, files, tta=True, crop="auto")
    assert not skipped
    return table, rows


def _assert_same_faces(answer, expected, written, name):
    """The API's faces are predict's rows and the CSV's lines; the found faces' count."""
    faces = answer["faces"]
    # The API rounds its ages to 0.001 year.
    assert [face["age"] for face in faces] == pytest.approx(
        [row.age for row in expected], abs=6e-4
    ), name
    assert [float(row["predicted_age"]) for row in written] == pytest.approx(
        [face["age"] for face in faces], abs=0.051
    )
    for face, row, line in zip(faces, expected, written):
        if row.crop == "face":
            assert tuple(face["box"]) == row.box, name
            box = [int(line[key]) for key in ("x", "y", "width", "height")]
            assert box == face["box"]
        else:  # A face crop taken as it is: the whole picture is its box.
            assert face["box"] == [0, 0, answer["width"], answer["height"]]
        assert line["test_ages"] == face["error"]["ages"]
        assert int(line["test_faces"]) == face["error"]["faces"]
        assert line["warnings"] == "; ".join(face["warnings"])
    return sum(row.crop == "face" for row in expected)


def test_the_api_answers_the_ages_of_predict_crop_auto(
    server, model_path, pictures, tmp_path
):
    table, rows = _predicted_by_the_command(model_path, pictures, tmp_path)
    faces_found = 0
    for name, data in pictures.items():
        kind = "image/png" if name.endswith(".png") else "image/jpeg"
        answer = predict(server, data, kind)
        expected = [row for row in rows if row.path == str(tmp_path / name)]
        written = [row for row in table if row["path"] == str(tmp_path / name)]
        assert answer["crop"] == expected[0].crop == written[0]["crop"], name
        if expected[0].age is None:
            assert answer["faces"] == [] and "No face found" in answer["message"]
            continue
        faces_found += _assert_same_faces(answer, expected, written, name)
    assert faces_found >= 4
    # The ages differ from face to face: their agreement is not that of a constant.
    assert np.ptp([row.age for row in rows if row.age is not None]) > 1.0


def test_a_picture_turned_by_exif_is_answered_in_its_upright_pixels(server, pictures):
    answer = predict(server, pictures["turned.jpg"])
    assert (answer["width"], answer["height"]) == (800, 600)
    left, top, width, height = answer["faces"][0]["box"]
    # The face was pasted at (300, 60), 240 pixels wide, in the upright picture.
    assert abs(left + width / 2 - 420) < 30 and abs(top + height / 2 - 190) < 40


def test_errors_by_age_are_those_of_the_test_faces_predicted_there():
    true = [30, 31, 33, 40, 29, 35, 36, 38, 5, 90]
    predicted = [32, 31, 30, 35, 34, 39, 36, 38, 4, 85]
    rows = photos.errors_by_age(true, predicted)
    thirties = rows["30-39"]
    errors = np.array([-2, 0, 3, 5, -5, -4, 0, 0])  # true minus predicted, 30-39
    assert thirties.faces == 8
    assert thirties.mae == pytest.approx(np.abs(errors).mean(), abs=0.01)
    assert thirties.within == pytest.approx(np.quantile(np.abs(errors), 0.75), abs=0.01)
    assert (thirties.low, thirties.high) == pytest.approx(
        tuple(np.quantile(errors, [0.125, 0.875])), abs=0.01
    )
    assert rows["0-9"].faces == rows["80+"].faces == 1 and "20-29" not in rows
    assert photos.age_range(119.5) == "80+" and photos.age_range(-0.4) == "0-9"


def test_each_face_carries_the_error_measured_at_its_age(server, pictures, model_path):
    table = photos.error_table(model_path, tta=True)
    assert "400 test faces" in table.source
    for name in ("one.jpg", "two.png", "crop.jpg"):
        for face in predict(server, pictures[name])["faces"]:
            error = table.rows[photos.age_range(face["age"])]
            assert face["error"] == error._asdict()
            within = max(1, round(error.within))
            assert face["text"] == (
                f"about {face['age']:.0f}, usually within ±{within} years at this age"
            )


def test_the_weak_spots_are_named():
    table = photos.ErrorTable({}, "none")
    assert photos.age_notes(35.0, table, 120, True).warnings == ()
    assert "child" in photos.age_notes(4.0, table).warnings[0]
    assert "over 70" in photos.age_notes(77.0, table).warnings[0]
    assert "small face" in photos.age_notes(35.0, table, 28, True).warnings[0]
    assert "eyes not found" in photos.age_notes(35.0, table, 120, False).warnings[0]
    assert photos.age_notes(35.0, table).text == (
        "about 35 (its error at this age is unknown)"
    )


def test_a_model_without_its_test_run_says_its_errors_are_unknown(
    tmp_path, model_path, pictures
):
    alone = tmp_path / "model.keras"
    alone.write_bytes(Path(model_path).read_bytes())
    server, url = serve.start(alone, port=0)
    try:
        answer = predict(server, pictures["crop.jpg"])
    finally:
        server.stop()
    assert url == f"http://127.0.0.1:{server.server_address[1]}/"
    assert "no test_predictions.csv beside the model" in answer["errors_from"]
    face = answer["faces"][0]
    assert face["error"] is None and face["text"].endswith(
        "(its error at this age is unknown)"
    )


# --- the command ----------------------------------------------------------------------------


@pytest.mark.slow
def test_serve_prints_its_address_and_stops_cleanly_on_ctrl_c(
    model_path, pictures, tmp_path
):
    errors = tmp_path / "stderr.txt"
    process = subprocess.Popen(
        [
            sys.executable,
            "train_loop.py",
            "serve",
            "--model",
            model_path,
            "--port",
            "0",
        ],
        cwd=REPOSITORY,
        stdout=subprocess.PIPE,
        stderr=errors.open("w"),
        text=True,
    )
    try:
        # The address is printed once the model is loaded and ready.
        assert select.select([process.stdout], [], [], 300)[0], "no address printed"
        line = process.stdout.readline()
        assert line.startswith("The page is at http://127.0.0.1:"), line
        url = line.split()[4]
        host, port = url.split("/")[2].split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=120)
        connection.request("POST", "/api/predict", pictures["crop.jpg"])
        assert json.loads(connection.getresponse().read())["faces"]
        connection.close()
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    errors = errors.read_text()
    assert process.returncode == 0, errors
    assert "stopped" in errors and "Traceback" not in errors
    assert "errors at each age: the 400 test faces" in errors
