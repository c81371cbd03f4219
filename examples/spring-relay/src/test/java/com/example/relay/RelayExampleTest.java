package com.example.relay;

import static org.assertj.core.api.Assertions.assertThat;
import static org.assertj.core.api.Assertions.assertThatThrownBy;

import com.example.relay.support.BrokerProcess;
import com.example.relay.support.Frames;
import com.example.relay.support.Stomp;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.springframework.beans.factory.annotation.Autowired;
import org.springframework.beans.factory.annotation.Qualifier;
import org.springframework.boot.test.context.SpringBootTest;
import org.springframework.boot.test.web.server.LocalServerPort;
import org.springframework.messaging.simp.SimpMessagingTemplate;
import org.springframework.messaging.simp.broker.AbstractBrokerMessageHandler;
import org.springframework.messaging.simp.stomp.ReactorNettyTcpStompClient;
import org.springframework.messaging.simp.stomp.StompHeaders;
import org.springframework.messaging.simp.stomp.StompSession;
import org.springframework.messaging.MessageDeliveryException;
import org.springframework.test.context.DynamicPropertyRegistry;
import org.springframework.scheduling.concurrent.ThreadPoolTaskScheduler;
import org.springframework.test.context.DynamicPropertySource;
import org.springframework.web.socket.WebSocketHttpHeaders;
import org.springframework.web.socket.client.standard.StandardWebSocketClient;
import org.springframework.web.socket.messaging.WebSocketStompClient;
import org.springframework.web.socket.sockjs.client.SockJsClient;
import org.springframework.web.socket.sockjs.client.WebSocketTransport;

/**
 * The example app against the real broker binary: a WebSocket STOMP client (what a browser
 * is) connects to the app's {@code /ws}; {@code /topic} and {@code /queue} traffic goes through
 * Spring's broker relay to stomp-broker and back.
 */
@SpringBootTest(webEnvironment = SpringBootTest.WebEnvironment.RANDOM_PORT)
class RelayExampleTest {

    /** Started before the Spring context, which connects the relay to it. */
    private static BrokerProcess broker = BrokerProcess.start();

    @DynamicPropertySource
    static void relayProperties(DynamicPropertyRegistry registry) {
        registry.add("relay.port", () -> broker.stompPort());
    }

    @AfterAll
    static void stopBroker() {
        broker.close();
    }

    @LocalServerPort
    private int port;

    @Autowired
    private SimpMessagingTemplate template;

    @Autowired
    @Qualifier("stompBrokerRelayMessageHandler")
    private AbstractBrokerMessageHandler relay;

    private final ThreadPoolTaskScheduler scheduler = Stomp.scheduler();
    private final WebSocketStompClient browserClient = new WebSocketStompClient(new StandardWebSocketClient());
    private final List<StompSession> sessions = new ArrayList<>();
    private ReactorNettyTcpStompClient brokerClient;

    @BeforeEach
    void relayConnected() {
        browserClient.setTaskScheduler(scheduler);
        Stomp.waitUntil(Duration.ofSeconds(20), "the relay's system session", relay::isBrokerAvailable);
    }

    @AfterEach
    void disconnect() {
        for (StompSession s : sessions) {
            if (s.isConnected()) {
                s.disconnect();
            }
        }
        browserClient.stop();
        if (brokerClient != null) {
            brokerClient.shutdown();
        }
        scheduler.shutdown();
    }

    /** A "browser" session to the app's /ws, logged in as {@code user}. */
    private StompSession browser(String user) {
        StompSession s = Stomp.await(browserClient.connectAsync("ws://127.0.0.1:" + port + "/ws",
                new WebSocketHttpHeaders(), Stomp.connectHeaders(user), Stomp.handler("browser " + user)));
        sessions.add(s);
        return s;
    }

    /** A session straight to the broker's STOMP port, bypassing the app. */
    private StompSession direct() {
        if (brokerClient == null) {
            brokerClient = new ReactorNettyTcpStompClient("127.0.0.1", broker.stompPort());
            brokerClient.setTaskScheduler(scheduler);
        }
        StompSession s = Stomp.await(brokerClient.connectAsync(Stomp.connectHeaders("direct"),
                Stomp.handler("direct")));
        sessions.add(s);
        return s;
    }

    @Test
    void convertAndSendReachesBrowserThroughTheBroker() {
        Frames viaApp = Stomp.subscribe(browser("carol"), "/topic/greetings");
        Frames atBroker = Stomp.subscribe(direct(), "/topic/greetings");

        template.convertAndSend("/topic/greetings", new ChatController.Greeting("hi all", "server"));

        Frames.Frame got = viaApp.next();
        assertThat(got.body()).isEqualTo("{\"text\":\"hi all\",\"from\":\"server\"}");
        assertThat(got.headers().getContentType().toString()).startsWith("application/json");
        assertThat(got.headers().getDestination()).isEqualTo("/topic/greetings");
        // The same message reached a client of the broker itself: it went through the broker.
        assertThat(atBroker.next().body()).isEqualTo(got.body());
    }

    @Test
    void convertAndSendToUserReachesOnlyThatUser() {
        Frames alice = Stomp.subscribe(browser("alice"), "/user/queue/notes");
        Frames bob = Stomp.subscribe(browser("bob"), "/user/queue/notes");

        template.convertAndSendToUser("alice", "/queue/notes", new ChatController.Greeting("for alice", "server"));
        Frames.Frame got = alice.next();
        assertThat(got.body()).contains("\"text\":\"for alice\"");
        // Spring's user destination: the client sees the destination it subscribed to.
        assertThat(got.headers().getDestination()).isEqualTo("/user/queue/notes");

        // Bob's first message is his own: alice's, sent earlier on the same relay connection,
        // never reached him.
        template.convertAndSendToUser("bob", "/queue/notes", new ChatController.Greeting("for bob", "server"));
        assertThat(bob.next().body()).contains("\"text\":\"for bob\"");
        assertThat(alice.pending()).isZero();
    }

    @Test
    void clientSendToTopicPassesThroughTheRelay() {
        Frames viaApp = Stomp.subscribe(browser("dave"), "/topic/chat");
        Frames atBroker = Stomp.subscribe(direct(), "/topic/chat");

        // The broker's RECEIPT comes back through the relay.
        Stomp.send(browser("erin"), "/topic/chat", "text/plain", "hello from erin");

        assertThat(viaApp.next().body()).isEqualTo("hello from erin");
        assertThat(atBroker.next().body()).isEqualTo("hello from erin");
    }

    @Test
    void clientSendToAppReachesMessageMappingAndItsReplyGoesThroughTheBroker() {
        Frames viaApp = Stomp.subscribe(browser("frank"), "/topic/greetings");
        Frames atBroker = Stomp.subscribe(direct(), "/topic/greetings");

        Stomp.sendNoReceipt(browser("grace"), "/app/hello", "application/json", "{\"name\":\"Ann\"}");

        String expected = "{\"text\":\"Hello, Ann!\",\"from\":\"grace\"}";
        assertThat(viaApp.next().body()).isEqualTo(expected);
        assertThat(atBroker.next().body()).isEqualTo(expected);
    }

    @Test
    void sockJsEndpointWorksThroughTheRelay() {
        WebSocketStompClient sockJs = new WebSocketStompClient(
                new SockJsClient(List.of(new WebSocketTransport(new StandardWebSocketClient()))));
        sockJs.setTaskScheduler(scheduler);
        try {
            StompSession s = Stomp.await(sockJs.connectAsync("http://127.0.0.1:" + port + "/sockjs",
                    new WebSocketHttpHeaders(), Stomp.connectHeaders("ivan"), Stomp.handler("sockjs ivan")));
            sessions.add(s);
            Frames frames = Stomp.subscribe(s, "/topic/greetings");
            template.convertAndSend("/topic/greetings", new ChatController.Greeting("over SockJS", "server"));
            assertThat(frames.next().body()).contains("\"text\":\"over SockJS\"");
        } finally {
            sessions.forEach(x -> {
                if (x.isConnected()) {
                    x.disconnect();
                }
            });
            sessions.clear();
            sockJs.stop();
        }
    }

    @Test
    void connectWithoutLoginIsRefused() {
        Stomp.Handler anonymous = Stomp.handler("anonymous");
        assertThatThrownBy(() -> Stomp.await(browserClient.connectAsync("ws://127.0.0.1:" + port + "/ws",
                new WebSocketHttpHeaders(), new StompHeaders(), anonymous)))
                .isInstanceOf(AssertionError.class);
        Stomp.waitUntil(Stomp.TIMEOUT, "an ERROR frame", () -> !anonymous.errors().isEmpty());
        assertThat(anonymous.errors().peek().getFirst("message")).isEqualTo("CONNECT needs a login header");
    }

    @Test
    void brokerRestartIsSurvived() {
        Stomp.Handler judy = Stomp.handler("browser judy");
        StompSession before = Stomp.await(browserClient.connectAsync("ws://127.0.0.1:" + port + "/ws",
                new WebSocketHttpHeaders(), Stomp.connectHeaders("judy"), judy));
        sessions.add(before);
        Stomp.subscribe(before, "/topic/greetings");

        int stompPort = broker.stompPort();
        broker.kill();
        try {
            Stomp.waitUntil(Duration.ofSeconds(20), "the relay to notice the broker is gone",
                    () -> !relay.isBrokerAvailable());
            // A browser session of the old broker is told with an ERROR (and must reconnect).
            Stomp.waitUntil(Stomp.TIMEOUT, "an ERROR to the browser session", () -> !judy.errors().isEmpty());
            // While the broker is away, the app's sends fail loudly.
            assertThatThrownBy(() -> template.convertAndSend("/topic/greetings", "lost"))
                    .isInstanceOf(MessageDeliveryException.class);
        } finally {
            // The same STOMP port: the relay's configuration does not change.
            broker.close();
            broker = BrokerProcess.start(stompPort);
        }
        // The relay retries its system connection every 5 s.
        Stomp.waitUntil(Duration.ofSeconds(30), "the relay to reconnect", relay::isBrokerAvailable);

        Frames frames = Stomp.subscribe(browser("heidi"), "/topic/greetings");
        template.convertAndSend("/topic/greetings", new ChatController.Greeting("back again", "server"));
        assertThat(frames.next().body()).contains("\"text\":\"back again\"");
    }
}
