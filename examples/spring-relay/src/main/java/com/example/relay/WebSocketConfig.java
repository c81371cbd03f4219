package com.example.relay;

import org.springframework.beans.factory.annotation.Value;
import org.springframework.context.annotation.Configuration;
import org.springframework.messaging.simp.config.ChannelRegistration;
import org.springframework.messaging.simp.config.MessageBrokerRegistry;
import org.springframework.web.socket.config.annotation.EnableWebSocketMessageBroker;
import org.springframework.web.socket.config.annotation.StompEndpointRegistry;
import org.springframework.web.socket.config.annotation.WebSocketMessageBrokerConfigurer;

/**
 * Browsers speak STOMP to this app on {@code /ws}; {@code /topic} and {@code /queue} go through
 * Spring's broker relay to stomp-broker's STOMP port, {@code /app} to {@code @MessageMapping}
 * methods. All values come from {@code relay.*} properties (application.properties, or the
 * environment: {@code RELAY_PORT=61613}, or {@code -Drelay.port=61613}).
 */
@Configuration
@EnableWebSocketMessageBroker
public class WebSocketConfig implements WebSocketMessageBrokerConfigurer {

    @Value("${relay.host}")
    private String relayHost;

    @Value("${relay.port}")
    private int relayPort;

    @Value("${relay.client-login}")
    private String clientLogin;

    @Value("${relay.client-passcode}")
    private String clientPasscode;

    @Value("${relay.system-login}")
    private String systemLogin;

    @Value("${relay.system-passcode}")
    private String systemPasscode;

    @Override
    public void registerStompEndpoints(StompEndpointRegistry registry) {
        registry.addEndpoint("/ws");
        registry.addEndpoint("/sockjs").withSockJS();
    }

    @Override
    public void configureMessageBroker(MessageBrokerRegistry registry) {
        registry.enableStompBrokerRelay("/topic", "/queue")
                .setRelayHost(relayHost)
                .setRelayPort(relayPort)
                // Every browser session gets its own broker connection with these credentials.
                .setClientLogin(clientLogin)
                .setClientPasscode(clientPasscode)
                // One shared connection carries the app's own sends (SimpMessagingTemplate);
                // name this login in the broker's limits.system_logins.
                .setSystemLogin(systemLogin)
                .setSystemPasscode(systemPasscode);
        registry.setApplicationDestinationPrefixes("/app");
        registry.setUserDestinationPrefix("/user");
    }

    @Override
    public void configureClientInboundChannel(ChannelRegistration registration) {
        registration.interceptors(new LoginInterceptor());
    }
}
