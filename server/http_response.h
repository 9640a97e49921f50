/* http_response.h: placeholder, being written. */
#pragma once
