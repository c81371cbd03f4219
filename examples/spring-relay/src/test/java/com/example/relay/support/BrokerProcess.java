package com.example.relay.support;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.TimeUnit;

/**
 * The real stomp-broker binary, started by a test: {@code $STOMP_BROKER_BIN}, else the path the
 * pom passes ({@code target/debug/stomp-broker} of the Cargo workspace). It listens on
 * 127.0.0.1:0 (or a given STOMP port, for a restart) and reports its ports via
 * {@code --port-file}, which is polled with a deadline.
 */
public final class BrokerProcess implements AutoCloseable {

    private static final ObjectMapper JSON = new ObjectMapper();
    private static final Duration START_TIMEOUT = Duration.ofSeconds(20);

    private final Process process;
    private final Path dir;
    private final Path log;
    private final int stompPort;
    private final int httpPort;

    private BrokerProcess(Process process, Path dir, Path log, int stompPort, int httpPort) {
        this.process = process;
        this.dir = dir;
        this.log = log;
        this.stompPort = stompPort;
        this.httpPort = httpPort;
    }

    /** The broker binary this test run uses. */
    public static Path binary() {
        String bin = System.getenv("STOMP_BROKER_BIN");
        if (bin == null || bin.isBlank()) {
            bin = System.getenv("STOMP_BROKER_BIN_DEFAULT");
        }
        if (bin == null || bin.isBlank()) {
            bin = "../../target/debug/stomp-broker";
        }
        return Path.of(bin).toAbsolutePath().normalize();
    }

    /** Starts a broker on free ports. */
    public static BrokerProcess start() {
        return start(0);
    }

    /**
     * Starts a broker whose STOMP listener is on {@code stompPort} (0: any free port). A port
     * that a killed broker just released is retried a few times.
     */
    public static BrokerProcess start(int stompPort) {
        IllegalStateException last = null;
        for (int attempt = 0; attempt < 5; attempt++) {
            try {
                return startOnce(stompPort);
            } catch (IllegalStateException e) {
                if (stompPort == 0) {
                    throw e;
                }
                last = e;
                sleepQuietly(Duration.ofMillis(200L * (attempt + 1)));
            }
        }
        throw last;
    }

    private static BrokerProcess startOnce(int stompPort) {
        Path bin = binary();
        if (!Files.isExecutable(bin)) {
            throw new IllegalStateException("broker binary not found: " + bin
                    + " (cargo build -p stomp-broker, or set STOMP_BROKER_BIN)");
        }
        try {
            Path dir = Files.createTempDirectory("stomp-broker-spring-");
            Path portFile = dir.resolve("ports.json");
            Path log = dir.resolve("broker.log");
            List<String> cmd = new ArrayList<>(List.of(bin.toString(),
                    "--stomp-listen", "127.0.0.1:" + stompPort,
                    "--http-listen", "127.0.0.1:0",
                    "--port-file", portFile.toString()));
            ProcessBuilder pb = new ProcessBuilder(cmd).redirectErrorStream(true)
                    .redirectOutput(log.toFile());
            Process process = pb.start();
            long deadline = System.nanoTime() + START_TIMEOUT.toNanos();
            while (System.nanoTime() < deadline) {
                if (Files.exists(portFile)) {
                    // The broker writes the file atomically (write + rename).
                    JsonNode ports = JSON.readTree(portFile.toFile());
                    return new BrokerProcess(process, dir, log,
                            portOf(ports.path("stomp").asText()), portOf(ports.path("http").asText()));
                }
                if (!process.isAlive()) {
                    break;
                }
                sleepQuietly(Duration.ofMillis(20));
            }
            process.destroyForcibly().waitFor(5, TimeUnit.SECONDS);
            throw new IllegalStateException("broker did not start (" + String.join(" ", cmd)
                    + "):\n" + tail(log));
        } catch (IOException e) {
            throw new IllegalStateException("starting the broker: " + e, e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new IllegalStateException(e);
        }
    }

    private static int portOf(String addr) {
        return Integer.parseInt(addr.substring(addr.lastIndexOf(':') + 1));
    }

    public int stompPort() {
        return stompPort;
    }

    public int httpPort() {
        return httpPort;
    }

    /** The broker's own WebSocket endpoint. */
    public String wsUrl() {
        return "ws://127.0.0.1:" + httpPort + "/ws";
    }

    /** The broker's SockJS endpoint ({@code [sockjs] path}, default {@code /sockjs}). */
    public String sockJsUrl() {
        return "http://127.0.0.1:" + httpPort + "/sockjs";
    }

    /** The broker's output so far (for assertion messages). */
    public String logs() {
        return tail(log);
    }

    /** Stops the process ({@link Process#destroy()}: SIGTERM), SIGKILL after 10 s. */
    public void kill() {
        process.destroy();
        try {
            if (!process.waitFor(10, TimeUnit.SECONDS)) {
                process.destroyForcibly().waitFor(5, TimeUnit.SECONDS);
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    @Override
    public void close() {
        kill();
        try (var files = Files.walk(dir)) {
            files.sorted(java.util.Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
        } catch (IOException ignored) {
            // a temp dir left behind is harmless
        }
    }

    private static String tail(Path log) {
        try {
            List<String> lines = Files.readAllLines(log);
            return String.join("\n", lines.subList(Math.max(0, lines.size() - 50), lines.size()));
        } catch (IOException e) {
            return "(no broker log: " + e + ")";
        }
    }

    private static void sleepQuietly(Duration d) {
        try {
            Thread.sleep(d.toMillis());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }
}
