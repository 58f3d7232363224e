-- Failed sign-ins to the web panel, per login (`l:<login>`) and per client address
-- (`a:<address>`), so a restart of `botvisor panel` does not reset the sign-in throttle
-- (docs/panel-web.md, "Throttling"). A key's window starts at its first failure; rows older
-- than the window are deleted by the next failure.
CREATE TABLE login_failures (
    key      TEXT        PRIMARY KEY,
    failures INT         NOT NULL,
    since    TIMESTAMPTZ NOT NULL DEFAULT now()
);
