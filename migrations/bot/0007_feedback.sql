-- The feedback module: users write to the bot, the business answers from its admin chat.
-- Every mapping lives here (filled from the outbox's results), so a restart loses none.

-- One row per user who wrote: their forum topic in the admin chat (topics mode), whether
-- an admin banned them, how many messages they sent, when they last got the auto-reply.
CREATE TABLE feedback_users (
    user_id         BIGINT      PRIMARY KEY,
    -- The user's topic in the admin chat (its message_thread_id), once created.
    thread_id       INT         NULL,
    -- The outbox row of a createForumTopic still in flight for this user.
    topic_request   BIGINT      NULL,
    banned          BOOLEAN     NOT NULL DEFAULT FALSE,
    messages        BIGINT      NOT NULL DEFAULT 0,
    last_message_at TIMESTAMPTZ NULL,
    -- Set when the out-of-hours auto-reply was sent; cleared by an admin's answer.
    auto_replied_at TIMESTAMPTZ NULL
);

CREATE UNIQUE INDEX feedback_users_thread ON feedback_users (thread_id) WHERE thread_id IS NOT NULL;

-- What each request the module queued is for, read back when the sender reports its result:
-- `topic` (a user's new topic), `forward` (a user's message copied to the admin chat),
-- `reply` (an admin's answer copied to the user). A row is deleted once its result is handled.
CREATE TABLE feedback_requests (
    outbox_id        BIGINT      PRIMARY KEY,
    kind             TEXT        NOT NULL CHECK (kind IN ('topic', 'forward', 'reply')),
    user_id          BIGINT      NOT NULL,
    -- forward: the user's message; reply: the admin's message being copied.
    source_message   INT         NULL,
    -- reply: the admin chat the answer came from (for a notice when it is undeliverable).
    source_chat      BIGINT      NULL,
    -- forward: the topic the copy went to; reply: the topic the answer came from.
    source_thread    INT         NULL,
    -- reply: the answer's text or caption, recorded in the history as the admin's.
    content          TEXT        NULL,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Messages in the admin chat that stand for a user (the copies and headers the bot posted):
-- an admin's reply to one of them goes to that user.
CREATE TABLE feedback_messages (
    chat_id    BIGINT      NOT NULL,
    message_id INT         NOT NULL,
    user_id    BIGINT      NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (chat_id, message_id)
);

-- A user's messages waiting for their topic to exist (created, or re-created after an admin
-- deleted it); copied in order once it does.
CREATE TABLE feedback_pending (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    BIGINT      NOT NULL,
    message_id INT         NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX feedback_pending_user ON feedback_pending (user_id, id);
