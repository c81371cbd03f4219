package com.example.relay.brokerclients;

import com.example.relay.support.Stomp;
import java.util.List;
import org.springframework.messaging.simp.stomp.StompSession;
import org.springframework.scheduling.concurrent.ThreadPoolTaskScheduler;
import org.springframework.web.socket.WebSocketHttpHeaders;
import org.springframework.web.socket.client.standard.StandardWebSocketClient;
import org.springframework.web.socket.messaging.WebSocketStompClient;
import org.springframework.web.socket.sockjs.client.SockJsClient;
import org.springframework.web.socket.sockjs.client.WebSocketTransport;

/** Spring's SockJsClient with its WebSocket transport on the broker's {@code /sockjs}. */
class SockJsWebSocketClientTest extends BrokerClientContract {

    private final ThreadPoolTaskScheduler scheduler = Stomp.scheduler();
    private final WebSocketStompClient client = new WebSocketStompClient(
            new SockJsClient(List.of(new WebSocketTransport(new StandardWebSocketClient()))));

    SockJsWebSocketClientTest() {
        client.setTaskScheduler(scheduler);
    }

    @Override
    protected StompSession connect(String login) {
        return Stomp.await(client.connectAsync(broker.sockJsUrl(), new WebSocketHttpHeaders(),
                Stomp.connectHeaders(login), Stomp.handler("sockjs-ws " + login)));
    }

    @Override
    protected void stopClient() {
        client.stop();
        scheduler.shutdown();
    }
}
