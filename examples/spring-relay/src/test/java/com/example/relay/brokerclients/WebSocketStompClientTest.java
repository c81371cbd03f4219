package com.example.relay.brokerclients;

import com.example.relay.support.Stomp;
import org.springframework.messaging.simp.stomp.StompSession;
import org.springframework.scheduling.concurrent.ThreadPoolTaskScheduler;
import org.springframework.web.socket.WebSocketHttpHeaders;
import org.springframework.web.socket.client.standard.StandardWebSocketClient;
import org.springframework.web.socket.messaging.WebSocketStompClient;

/** Spring's WebSocketStompClient (JSR-356 client) on the broker's {@code /ws}. */
class WebSocketStompClientTest extends BrokerClientContract {

    private final ThreadPoolTaskScheduler scheduler = Stomp.scheduler();
    private final WebSocketStompClient client = new WebSocketStompClient(new StandardWebSocketClient());

    WebSocketStompClientTest() {
        client.setTaskScheduler(scheduler);
    }

    @Override
    protected StompSession connect(String login) {
        return Stomp.await(client.connectAsync(broker.wsUrl(), new WebSocketHttpHeaders(),
                Stomp.connectHeaders(login), Stomp.handler("ws " + login)));
    }

    @Override
    protected void stopClient() {
        client.stop();
        scheduler.shutdown();
    }
}
