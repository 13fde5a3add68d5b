//! What arrived: the request head as bytes ([`header_pairs`], [`head`]), its path normalised and
//! the route it matches ([`routes`]), and the screen every request passes before any route is
//! chosen ([`firewall`]: the readings an upstream framework would make differently), and the IP
//! allow and deny lists ([`network`]).
pub mod firewall;
pub mod head;
pub mod header_pairs;
pub mod network;
pub mod routes;
