package com.example.relay;

import java.security.Principal;
import org.springframework.messaging.Message;
import org.springframework.messaging.MessageChannel;
import org.springframework.messaging.MessageDeliveryException;
import org.springframework.messaging.simp.stomp.StompCommand;
import org.springframework.messaging.simp.stomp.StompHeaderAccessor;
import org.springframework.messaging.support.ChannelInterceptor;
import org.springframework.messaging.support.MessageHeaderAccessor;

/**
 * Demo authentication: the CONNECT frame's {@code login} header becomes the session's user, so
 * {@code /user/...} destinations and {@code convertAndSendToUser} have someone to address. It
 * checks no password: a real app verifies credentials here (or uses Spring Security).
 */
public class LoginInterceptor implements ChannelInterceptor {

    @Override
    public Message<?> preSend(Message<?> message, MessageChannel channel) {
        StompHeaderAccessor accessor =
                MessageHeaderAccessor.getAccessor(message, StompHeaderAccessor.class);
        if (accessor != null && StompCommand.CONNECT.equals(accessor.getCommand())) {
            String login = accessor.getLogin();
            if (login == null || login.isBlank()) {
                throw new MessageDeliveryException("CONNECT needs a login header");
            }
            Principal user = () -> login;
            accessor.setUser(user);
        }
        return message;
    }
}
