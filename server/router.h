/* router.h: placeholder, being written. */
#pragma once
