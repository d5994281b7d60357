"""DATABASE_PASSWORD: any password reaches the database intact, however URL-hostile it is."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from orbilnot.shared.config import DatabaseSettings


@pytest.mark.parametrize("password", ["p@ss/w:rd", "100%?#&=+ ok", "plain"])
def test_database_password_replaces_the_urls_and_survives_encoding(
    monkeypatch: pytest.MonkeyPatch, password: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://orbilnot@db.example:5432/orbilnot?ssl=require")
    monkeypatch.setenv("DATABASE_PASSWORD", password)
    url = make_url(DatabaseSettings().database_url)
    assert url.password == password
    assert (url.drivername, url.username, url.host, url.port, url.database) == (
        "postgresql+asyncpg",
        "orbilnot",
        "db.example",
        5432,
        "orbilnot",
    )
    assert url.query == {"ssl": "require"}


def test_without_database_password_the_url_is_used_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_PASSWORD", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://u:secret@h/db")
    assert DatabaseSettings().database_url == "postgresql+asyncpg://u:secret@h/db"
