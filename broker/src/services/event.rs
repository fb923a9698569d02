//! `event.subscribe`, `event.unsubscribe`, `event.publish`. Events sent as event messages
//! need none of these; `publish` is for senders that want the sequence number back.

use switchboard_protocol::mgmt::{PublishArgs, PublishReply, TopicArgs};
use switchboard_protocol::{Errno, Flags, Message};

use super::{decode, empty, reply};
use crate::router::Router;

pub(super) fn handle(router: &Router, method: &str, msg: &Message) {
    let Some(&sender) = msg.route.last() else {
        return;
    };
    match method {
        "subscribe" => {
            let Some(args) = decode::<TopicArgs>(router, msg) else {
                return;
            };
            match router.subscribe(sender, &args.topic) {
                Ok(()) => router.respond(msg, empty()),
                Err(e) => router.respond_error(msg, Errno::EINVAL, e.to_string()),
            }
        }
        "unsubscribe" => {
            let Some(args) = decode::<TopicArgs>(router, msg) else {
                return;
            };
            if router.unsubscribe(sender, &args.topic) {
                router.respond(msg, empty());
            } else {
                router.respond_error(msg, Errno::ENOENT, format!("not subscribed to '{}'", args.topic));
            }
        }
        "publish" => {
            let Some(args) = decode::<PublishArgs>(router, msg) else {
                return;
            };
            if args.topic.is_empty() {
                return router.respond_error(msg, Errno::EINVAL, "an event needs a topic");
            }
            let mut ev = Message::event(args.topic, args.payload);
            ev.cred = msg.cred;
            if args.private {
                ev.flags = Flags::PRIVATE;
            }
            let seq = router.publish(ev);
            reply(router, msg, &PublishReply { seq });
        }
        m => router.respond_error(msg, Errno::ENOSYS, format!("service 'event' has no method '{m}'")),
    }
}
