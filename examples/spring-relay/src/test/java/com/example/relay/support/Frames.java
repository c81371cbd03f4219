package com.example.relay.support;

import java.lang.reflect.Type;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import org.springframework.messaging.simp.stomp.StompFrameHandler;
import org.springframework.messaging.simp.stomp.StompHeaders;

/**
 * Collects the MESSAGE frames of one subscription; payloads are taken as raw bytes (the
 * client's default SimpleMessageConverter), so any content type passes through unchanged.
 */
public final class Frames implements StompFrameHandler {

    /** One received frame. */
    public record Frame(StompHeaders headers, String body) {}

    private final BlockingQueue<Frame> frames = new LinkedBlockingQueue<>();

    @Override
    public Type getPayloadType(StompHeaders headers) {
        return byte[].class;
    }

    @Override
    public void handleFrame(StompHeaders headers, Object payload) {
        byte[] body = payload == null ? new byte[0] : (byte[]) payload;
        frames.add(new Frame(headers, new String(body, StandardCharsets.UTF_8)));
    }

    /** The next frame, failing the test if none comes within {@code timeout}. */
    public Frame next(Duration timeout) {
        try {
            Frame f = frames.poll(timeout.toMillis(), TimeUnit.MILLISECONDS);
            if (f == null) {
                throw new AssertionError("no MESSAGE within " + timeout);
            }
            return f;
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new AssertionError(e);
        }
    }

    /** The next frame, within {@link Stomp#TIMEOUT}. */
    public Frame next() {
        return next(Stomp.TIMEOUT);
    }

    /** Frames received and not yet taken. */
    public int pending() {
        return frames.size();
    }
}
