package com.example.relay.brokerclients;

import com.example.relay.support.Stomp;
import java.util.List;
import org.springframework.messaging.simp.stomp.StompSession;
import org.springframework.scheduling.concurrent.ThreadPoolTaskScheduler;
import org.springframework.web.client.RestTemplate;
import org.springframework.web.socket.WebSocketHttpHeaders;
import org.springframework.web.socket.messaging.WebSocketStompClient;
import org.springframework.web.socket.sockjs.client.RestTemplateXhrTransport;
import org.springframework.web.socket.sockjs.client.SockJsClient;

/**
 * Spring's SockJsClient with only its HTTP transport (xhr_streaming, then xhr polling): what a
 * client behind a proxy that breaks WebSocket falls back to, on the broker's {@code /sockjs}.
 */
class SockJsXhrClientTest extends BrokerClientContract {

    private final ThreadPoolTaskScheduler scheduler = Stomp.scheduler();
    private final WebSocketStompClient client = new WebSocketStompClient(
            new SockJsClient(List.of(new RestTemplateXhrTransport(new RestTemplate()))));

    SockJsXhrClientTest() {
        client.setTaskScheduler(scheduler);
    }

    @Override
    protected StompSession connect(String login) {
        return Stomp.await(client.connectAsync(broker.sockJsUrl(), new WebSocketHttpHeaders(),
                Stomp.connectHeaders(login), Stomp.handler("sockjs-xhr " + login)));
    }

    @Override
    protected void stopClient() {
        client.stop();
        scheduler.shutdown();
    }
}
