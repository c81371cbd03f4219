package com.example.relay.support;

import java.lang.reflect.Type;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;
import org.springframework.messaging.simp.stomp.StompCommand;
import org.springframework.messaging.simp.stomp.StompHeaders;
import org.springframework.messaging.simp.stomp.StompSession;
import org.springframework.messaging.simp.stomp.StompSessionHandlerAdapter;
import org.springframework.scheduling.concurrent.ThreadPoolTaskScheduler;
import org.springframework.util.MimeTypeUtils;

/** Small helpers over Spring's StompSession for tests: every wait has a deadline. */
public final class Stomp {

    // Deadlines, not delays: generous for a loaded 2-core CI machine, never waited out when passing.
    public static final Duration TIMEOUT = Duration.ofSeconds(30);

    private Stomp() {}

    /** CONNECT headers with a login (the example app takes it as the user name). */
    public static StompHeaders connectHeaders(String login) {
        StompHeaders headers = new StompHeaders();
        headers.setLogin(login);
        headers.setPasscode("guest");
        return headers;
    }

    /** A session handler that records ERROR frames and prints what goes wrong. */
    public static Handler handler(String name) {
        return new Handler(name);
    }

    /** Records the headers of each ERROR frame; errors are printed, not swallowed. */
    public static final class Handler extends StompSessionHandlerAdapter {
        private final String name;
        private final BlockingQueue<StompHeaders> errors = new LinkedBlockingQueue<>();

        Handler(String name) {
            this.name = name;
        }

        /** Headers of the ERROR frames received so far. */
        public BlockingQueue<StompHeaders> errors() {
            return errors;
        }

        @Override
        public Type getPayloadType(StompHeaders headers) {
            return byte[].class;
        }

        @Override
        public void handleFrame(StompHeaders headers, Object payload) {
            System.err.println(name + ": ERROR frame " + headers);
            errors.add(headers);
        }

        @Override
        public void handleException(StompSession s, StompCommand command, StompHeaders headers,
                byte[] payload, Throwable exception) {
            System.err.println(name + ": exception on " + command + ": " + exception);
        }

        @Override
        public void handleTransportError(StompSession s, Throwable exception) {
            System.err.println(name + ": transport error: " + exception);
        }
    }

    /**
     * A scheduler for a Spring STOMP client: without one it tracks no receipts and sends no
     * heart-beats. Shut it down with the client.
     */
    public static ThreadPoolTaskScheduler scheduler() {
        ThreadPoolTaskScheduler scheduler = new ThreadPoolTaskScheduler();
        scheduler.setPoolSize(2);
        scheduler.setThreadNamePrefix("stomp-client-");
        scheduler.setDaemon(true);
        scheduler.initialize();
        return scheduler;
    }

    /** Waits for a connect future. */
    public static StompSession await(CompletableFuture<StompSession> session) {
        try {
            return session.get(TIMEOUT.toMillis(), TimeUnit.MILLISECONDS);
        } catch (Exception e) {
            throw new AssertionError("STOMP connect failed: " + e, e);
        }
    }

    /**
     * SUBSCRIBE with a receipt, and wait for the RECEIPT: after it the broker has the
     * subscription, so a message sent next reaches it.
     */
    public static Frames subscribe(StompSession session, String destination) {
        Frames frames = new Frames();
        CompletableFuture<Void> receipt = new CompletableFuture<>();
        session.setAutoReceipt(true);
        session.subscribe(destination, frames).addReceiptTask(() -> receipt.complete(null));
        awaitReceipt(receipt, "SUBSCRIBE " + destination);
        return frames;
    }

    /** SEND a text body with a receipt, and wait for the RECEIPT (the broker has it). */
    public static void send(StompSession session, String destination, String contentType, String body) {
        CompletableFuture<Void> receipt = new CompletableFuture<>();
        session.setAutoReceipt(true);
        session.send(sendHeaders(destination, contentType), body.getBytes(StandardCharsets.UTF_8))
                .addReceiptTask(() -> receipt.complete(null));
        awaitReceipt(receipt, "SEND " + destination);
    }

    /**
     * SEND without a receipt: for {@code /app/...} destinations, which Spring hands to a
     * {@code @MessageMapping} method and never acknowledges with a RECEIPT.
     */
    public static void sendNoReceipt(StompSession session, String destination, String contentType, String body) {
        session.setAutoReceipt(false);
        session.send(sendHeaders(destination, contentType), body.getBytes(StandardCharsets.UTF_8));
    }

    private static StompHeaders sendHeaders(String destination, String contentType) {
        StompHeaders headers = new StompHeaders();
        headers.setDestination(destination);
        headers.setContentType(MimeTypeUtils.parseMimeType(contentType));
        return headers;
    }

    private static void awaitReceipt(CompletableFuture<Void> receipt, String what) {
        try {
            receipt.get(TIMEOUT.toMillis(), TimeUnit.MILLISECONDS);
        } catch (Exception e) {
            throw new AssertionError("no RECEIPT for " + what + " within " + TIMEOUT, e);
        }
    }

    /** Polls {@code condition} until it holds, failing after {@code timeout}. */
    public static void waitUntil(Duration timeout, String what, BooleanSupplier condition) {
        long deadline = System.nanoTime() + timeout.toNanos();
        while (!condition.getAsBoolean()) {
            if (System.nanoTime() > deadline) {
                throw new AssertionError("timed out after " + timeout + " waiting for " + what);
            }
            try {
                Thread.sleep(20);
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new AssertionError(e);
            }
        }
    }
}
