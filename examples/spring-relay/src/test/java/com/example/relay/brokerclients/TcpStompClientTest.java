package com.example.relay.brokerclients;

import com.example.relay.support.Stomp;
import org.springframework.messaging.simp.stomp.ReactorNettyTcpStompClient;
import org.springframework.messaging.simp.stomp.StompSession;
import org.springframework.scheduling.concurrent.ThreadPoolTaskScheduler;

/** Spring's ReactorNettyTcpStompClient on the broker's STOMP/TCP port. */
class TcpStompClientTest extends BrokerClientContract {

    private final ThreadPoolTaskScheduler scheduler = Stomp.scheduler();
    private ReactorNettyTcpStompClient client;

    @Override
    protected StompSession connect(String login) {
        if (client == null) {
            client = new ReactorNettyTcpStompClient("127.0.0.1", broker.stompPort());
            client.setTaskScheduler(scheduler);
        }
        return Stomp.await(client.connectAsync(Stomp.connectHeaders(login), Stomp.handler("tcp " + login)));
    }

    @Override
    protected void stopClient() {
        if (client != null) {
            client.shutdown();
        }
        scheduler.shutdown();
    }
}
