"""The Twilio side of a trunk: the operator's client for Twilio's REST API (`client`)."""
