//! `service.add` / `service.remove`: an endpoint (module or client) registers extra services
//! it answers. A service has one owner; only the owner removes it.

use switchboard_loaders::check_name;
use switchboard_protocol::{mgmt::ServiceArgs, Errno, Message};

use super::{decode, empty};
use crate::router::Router;

pub(super) fn handle(router: &Router, method: &str, msg: &Message) {
    let Some(&sender) = msg.route.last() else {
        return;
    };
    match method {
        "add" => {
            let Some(args) = decode::<ServiceArgs>(router, msg) else {
                return;
            };
            if let Err(e) = check_name(&args.service) {
                return router.respond_error(msg, Errno::EINVAL, e);
            }
            match router.add_services(sender, std::slice::from_ref(&args.service)) {
                Ok(()) => router.respond(msg, empty()),
                Err(e) => router.respond_error(msg, Errno::EEXIST, e.to_string()),
            }
        }
        "remove" => {
            let Some(args) = decode::<ServiceArgs>(router, msg) else {
                return;
            };
            match router.remove_service(sender, &args.service) {
                Ok(()) => router.respond(msg, empty()),
                Err(Errno::ENOENT) => {
                    router.respond_error(msg, Errno::ENOENT, format!("no service '{}'", args.service))
                }
                Err(e) => router.respond_error(
                    msg,
                    e,
                    format!(
                        "service '{}' belongs to another endpoint; only its registrant may remove it",
                        args.service
                    ),
                ),
            }
        }
        m => router.respond_error(msg, Errno::ENOSYS, format!("service 'service' has no method '{m}'")),
    }
}
