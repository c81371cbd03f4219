package com.example.relay.brokerclients;

import static org.assertj.core.api.Assertions.assertThat;

import com.example.relay.support.BrokerProcess;
import com.example.relay.support.Frames;
import com.example.relay.support.Stomp;
import java.util.ArrayList;
import java.util.List;
import java.util.UUID;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.springframework.messaging.simp.stomp.StompSession;

/**
 * What every Spring Java STOMP client must be able to do against stomp-broker directly (no
 * Spring app in between). One subclass per client: a new client (e.g. SockJsClient against the
 * broker's /sockjs) is one more subclass implementing {@link #connect}.
 */
abstract class BrokerClientContract {

    protected static BrokerProcess broker;

    private final List<StompSession> sessions = new ArrayList<>();

    @BeforeAll
    static void startBroker() {
        broker = BrokerProcess.start();
    }

    @AfterAll
    static void stopBroker() {
        broker.close();
    }

    /** Connects this client to {@link #broker} as {@code login}. */
    protected abstract StompSession connect(String login);

    /** Stops this client's resources (called after each test). */
    protected abstract void stopClient();

    private StompSession session(String login) {
        StompSession s = connect(login);
        sessions.add(s);
        return s;
    }

    @AfterEach
    void disconnect() {
        for (StompSession s : sessions) {
            if (s.isConnected()) {
                s.disconnect();
            }
        }
        stopClient();
    }

    @Test
    void subscribeSendWithReceiptAndReceive() {
        String topic = "/topic/spring-client." + UUID.randomUUID();
        Frames frames = Stomp.subscribe(session("subscriber"), topic);

        Stomp.send(session("publisher"), topic, "text/plain", "hello from Spring");

        Frames.Frame got = frames.next();
        assertThat(got.body()).isEqualTo("hello from Spring");
        assertThat(got.headers().getDestination()).isEqualTo(topic);
        assertThat(got.headers().getContentType().toString()).startsWith("text/plain");
        assertThat(got.headers().getMessageId()).isNotBlank();
    }

    @Test
    void queueMessageGoesToOneSubscriber() {
        String queue = "/queue/spring-client." + UUID.randomUUID();
        StompSession s = session("worker");
        Frames frames = Stomp.subscribe(s, queue);

        Stomp.send(session("producer"), queue, "application/json", "{\"n\":1}");

        assertThat(frames.next().body()).isEqualTo("{\"n\":1}");
    }
}
